"""course_utils: the reference library of the course 'Seeing what a CNN sees'.

Hooks (`Hook`, `HookBwd`, `Hooks`), class activation maps (`cam`, `book_cam`, `gradcam` and its
family `gradcampp`, `layercam`, `scorecam` on one core), their
display and scoring (boxes, deletion/insertion, sanity checks), and the offline default data (SynthPets) and model. Importing it does no
work: data and models are built when first asked for.
"""
from .cam import (book_cam, cam, energy_in_box, gradcam, gradcam_weights, gradient_cam, normalize,
                  pointing_game, pointing_hits, upsample, weighted_sum)
from .cam_variants import (gradcampp, gradcampp_weights, layercam, layercam_weights, scorecam,
                           scorecam_weights)
from .faithfulness import (curve_auc, deletion_auc, deletion_curve, insertion_auc,
                           insertion_curve)
from .sanity import cascading_randomization, edge_map, randomized_copy, spearman
from .explorer import Explorer, explore, explore_grid
from .data import is_cat, load_boxes, pets_path, synth_pets, test_image, test_image_box
from .hooks import Hook, HookBwd, Hooks
from .model import get_learner
from .viz import image_array, show_cam

__all__ = ["Hook", "HookBwd", "Hooks", "gradcam", "gradcampp", "layercam", "scorecam",
           "gradient_cam", "weighted_sum", "gradcam_weights", "gradcampp_weights", "layercam_weights",
           "scorecam_weights", "deletion_curve", "insertion_curve", "curve_auc", "deletion_auc",
           "insertion_auc", "spearman", "randomized_copy", "cascading_randomization", "edge_map", "cam", "book_cam", "upsample", "normalize",
           "pointing_hits", "pointing_game", "energy_in_box", "show_cam", "image_array",
           "is_cat", "synth_pets", "load_boxes", "pets_path", "test_image", "test_image_box",
           "get_learner", "Explorer", "explore", "explore_grid"]
