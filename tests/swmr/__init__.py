"""ringcast.swmr against real SWMR writer processes, and fanning a live file out."""
