"""ringcast.pipeline: threaded pipelines, process steps and coroutine helpers."""
