"""Video (AVC-LM): H.264 clips as bytes, sampling of clips."""
