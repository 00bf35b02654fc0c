from .train_val_split import train_val_indices, train_val_split

__all__ = ['train_val_indices', 'train_val_split']
