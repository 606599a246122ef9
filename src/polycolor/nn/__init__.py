"""The network and what touches it directly: the UNet, the losses, model files, colour encoding. No tracking."""
