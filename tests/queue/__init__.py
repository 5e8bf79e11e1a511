"""The broadcast queue: BroadcastQueue, Reader, leases, groups, lossy readers, asyncio."""
