"""Training: the corpus the four data stages made, its sampler and loader, and the training loop.
"""
