"""Sources, long-tailed profiles and manifests, augmentations."""
