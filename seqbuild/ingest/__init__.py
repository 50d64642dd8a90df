"""Ingest: decode videos and streams, find shots, detect faces with MTCNN, align crops to 144x144."""
