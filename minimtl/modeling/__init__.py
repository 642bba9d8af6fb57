"""The parts of Faster/Mask R-CNN, one concept per file (readable PyTorch; kernels via minimtl.ops).

backbone.py   ResNet-18/34/50, C2..C5            fpn.py        feature pyramid, P2..P6
anchors.py    anchors per level                   box_coder.py  box deltas, encode/decode
matcher.py    IoU matching                        sampler.py    balanced fg/bg sampling
rpn.py        region proposal network             poolers.py    multi-scale RoIAlign (FPN eq. 1)
roi_heads.py  Fast R-CNN box head                 mask_head.py  Mask R-CNN mask head, mask pasting
transform.py  resize, normalise, batch; back to the original images
precision.py  mixed precision: what may be 16-bit (features) and what may not (geometry, losses)
"""
