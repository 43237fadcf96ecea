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


def build_tiny_whisper(dest: Path, seed: int = 0) -> str:
    """A randomly initialised Whisper (32-wide, one layer each side) with a byte-level tokenizer and
    Whisper's feature extractor, saved as a local folder: the transformers Whisper path runs for
    real (feature extraction, encoder, generation, decoding); its transcripts are noise."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(bytes_to_unicode().values())}))
    (dest / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    tok = WhisperTokenizer(str(dest / "vocab.json"), str(dest / "merges.txt"), bos_token=end, eos_token=end,
                           unk_token=end, pad_token=end)
    tok.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                          "<|notimestamps|>"]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in (end, "<|startoftranscript|>", "<|notimestamps|>")}
    cfg = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=ids[end],
                        bos_token_id=ids[end], eos_token_id=ids[end],
                        decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids[end], pad_token_id=ids[end],
        max_length=20, no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(dest)
    return str(dest)
