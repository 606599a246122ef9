"""The network and what touches it directly: the UNet, the losses, model files, painting a batch. No tracking."""
