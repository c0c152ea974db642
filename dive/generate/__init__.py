"""Generation: the pipeline loader, batch generation, grids, img2img, attention maps, speed bench."""

#: classifier-free guidance of every generation command, the studio and the bench. Measured on the
#: demo on the 3,000-step base (256 external ids, three scoring AGW models; docs/guidance.md): guidance 3
#: lifts identity AUC 0.612 -> 0.685 and Rank-1 0.94 -> 1.50 over guidance 1, and the FD to real
#: infrared improves too (1.96 -> 1.63). The checkpoint must be trained with caption dropout (the
#: trainer's default 5%) for the unconditional branch to mean anything.
DEFAULT_GUIDANCE = 3.0
