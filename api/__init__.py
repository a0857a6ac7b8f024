"""The HTTP front of Eventsnap Inference: validates requests and queues them for workers."""

__version__ = "0.1.0"
