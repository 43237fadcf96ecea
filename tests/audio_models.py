"""Small randomly initialised transformers audio models, saved as local folders the way a
downloaded checkpoint is: the evaluation's model loading and inference paths run for real on
them (nothing can be fetched from a hub in tests). Their outputs carry no meaning."""
from __future__ import annotations

import json
from pathlib import Path

VOCAB = ["<pad>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz'")


def _config(**extra):
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
                          feat_extract_norm="layer", mask_time_prob=0.0, **extra)


def build_audio_models(dest: Path, seed: int = 0) -> dict[str, str]:
    """{"asr": CTC model + processor, "mos": one-output regression head, "speaker": x-vector} folders."""
    import torch
    from transformers import (Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2ForSequenceClassification, Wav2Vec2ForXVector)

    torch.manual_seed(seed)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    paths = {kind: dest / kind for kind in ("asr", "mos", "speaker")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
        extractor.save_pretrained(path)
    (dest / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(VOCAB)}))
    Wav2Vec2CTCTokenizer(str(dest / "vocab.json"), word_delimiter_token="|").save_pretrained(paths["asr"])
    Wav2Vec2ForCTC(_config(vocab_size=len(VOCAB), pad_token_id=0)).save_pretrained(paths["asr"])
    Wav2Vec2ForSequenceClassification(_config(num_labels=1, classifier_proj_size=16)).save_pretrained(paths["mos"])
    Wav2Vec2ForXVector(_config(tdnn_dim=(32, 32, 64), tdnn_kernel=(5, 3, 1), tdnn_dilation=(1, 2, 1),
                               xvector_output_dim=16)).save_pretrained(paths["speaker"])
    return {k: str(v) for k, v in paths.items()}
