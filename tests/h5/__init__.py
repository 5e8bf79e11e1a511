"""The HDF5 Streamer: its queues, guards, worker pool and the native read path."""
