"""Quality of generated images: feature extractors (`features`) and the `dive metrics` report
(`quality`). Ranking metrics (CMC, mAP, mINP) live lower, in `dive.utils.ranking`."""
