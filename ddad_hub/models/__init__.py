from .feature_encoder import FeatureEncoder, load_state_dict_file

__all__ = ["FeatureEncoder", "load_state_dict_file"]
