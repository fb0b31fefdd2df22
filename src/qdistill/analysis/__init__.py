"""Analysis tools for trained models (loss surfaces)."""

from qdistill.analysis.loss_surface import LossSurface, filter_normalized_direction, loss_surface, plot_loss_surface

__all__ = ["LossSurface", "filter_normalized_direction", "loss_surface", "plot_loss_surface"]
