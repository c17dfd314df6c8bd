"""AM-NST: ambience-to-music neural style transfer."""

import os

# TensorFlow's default CPU allocator returns large buffers to the OS, so every
# NST step page-faults its feature maps back in (measured: a third of a step's
# time in the kernel). The BFC allocator keeps them pooled.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
