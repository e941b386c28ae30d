"""Models: frozen encoders (open_clip, torchvision), trainable backbones, and weight files found
offline, loaded strictly and digested. May import `benchmark.core` only."""
