"""Seeded data generators and loaders of users' data folders, one module per kind of data.

* :mod:`~vistream.models.data.images`: labelled images for backbone training, pruning and the
  1-bit work (digits, the harder digits composites, ImageFolder trees, CIFAR-10 batches);
* :mod:`~vistream.models.data.scene`: the scene of the synthetic clips (photo backgrounds,
  camera path, moving small objects, their anti-aliased drawing with exact ground truth);
* :mod:`~vistream.models.data.video`: seeded sample videos drawn from a scene, and their
  writers (video file, image folder, ground truth);
* :mod:`~vistream.models.data.tracking`: seeded tracking sequences with per-track attributes
  (shake, occlusion, blur, ...), the data of the tracking benchmark;
* :mod:`~vistream.models.data.mot`: seeded multi-target clips (targets entering and leaving,
  rotating and zooming camera, motion blur, noise) for ``vistream eval mot``; its ``render``
  and ``suite`` are used through the module, since the tracking sequences have their own;
* :mod:`~vistream.models.data.otb`: tracking sequences from OTB-layout folders;
* :mod:`~vistream.models.data.blur`: blurred/sharp pairs with captions for deblurring, and
  GoPro-layout folders.

Every generator is a pure function of its seed. The public functions and classes are named
here; constants that only make sense for one kind of data (``blur.SHAPES`` and
``scene.SHAPES`` differ) stay in their module.
"""

from vistream.models.data.blur import (
    Sample,
    SceneObject,
    blur_image,
    caption_of,
    convolve,
    decode_caption,
    encode_caption,
    eval_set,
    gopro_pairs,
    load_pair,
    make_sample,
    make_scene,
    motion_kernel,
    object_maps,
    photo,
    training_batch,
)
from vistream.models.data.images import (
    DataBundle,
    Split,
    batches,
    cache_dir,
    cifar10_batches,
    digits32,
    digits_composite,
    fingerprint,
    generate_composite,
    image_folder,
    load_dataset,
    split_indices,
)
from vistream.models.data.mot import MotSequence, MotSpec
from vistream.models.data.otb import LazyFrames, load_otb
from vistream.models.data.scene import (
    SceneSpec,
    SyntheticObject,
    background_canvas,
    blend_alpha,
    boxes_visible,
    camera_jumps,
    camera_path,
    check_background,
    composite,
    load_background,
    make_object,
    object_alpha,
    seeded_rng,
    simulate_track,
    view,
)
from vistream.models.data.tracking import (
    TargetLook,
    TrackingSequence,
    TrackingSpec,
    default_suite,
    render,
    suite_specs,
)
from vistream.models.data.video import (
    SyntheticVideo,
    generate,
    read_ground_truth,
    write_ground_truth,
    write_image_folder,
    write_video,
)

__all__ = [
    # images
    "DataBundle", "Split", "batches", "cache_dir", "cifar10_batches", "digits32",
    "digits_composite", "fingerprint", "generate_composite", "image_folder", "load_dataset",
    "split_indices",
    # scene
    "SceneSpec", "SyntheticObject", "background_canvas", "blend_alpha", "boxes_visible", "camera_jumps",
    "camera_path", "check_background", "composite", "load_background", "make_object",
    "object_alpha", "seeded_rng", "simulate_track", "view",
    # video
    "SyntheticVideo", "generate", "read_ground_truth", "write_ground_truth",
    "write_image_folder", "write_video",
    # tracking
    "TargetLook", "TrackingSequence", "TrackingSpec", "default_suite", "render", "suite_specs",
    # mot
    "MotSequence", "MotSpec",
    # otb
    "LazyFrames", "load_otb",
    # blur
    "Sample", "SceneObject", "blur_image", "caption_of", "convolve", "decode_caption",
    "encode_caption", "eval_set", "gopro_pairs", "load_pair", "make_sample", "make_scene",
    "motion_kernel", "object_maps", "photo", "training_batch",
]
