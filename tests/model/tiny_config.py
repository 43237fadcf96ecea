"""The tiny network config the model tests build."""

# A network small enough to build, train and export in milliseconds (prod(upsample_rates) = 16).
TINY = dict(
    n_vocab=20, spec_channels=33, segment_size=8, inter_channels=16, hidden_channels=16, filter_channels=32,
    n_heads=2, n_layers=3, kernel_size=3, p_dropout=0.1, resblock="1", resblock_kernel_sizes=[3, 5],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], upsample_rates=[4, 4], upsample_initial_channel=32,
    upsample_kernel_sizes=[8, 8], n_speakers=3, gin_channels=8, n_flow_layer=2, n_layers_trans_flow=3,
    num_tones=12, num_languages=3, bert_dim=384,
)
