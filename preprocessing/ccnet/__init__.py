"""CommonCrawl through the CCNet pipeline (Wenzek et al. 2020), as the LLaMA paper used it."""
