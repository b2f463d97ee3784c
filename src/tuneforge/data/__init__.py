"""The data layer: file rows → canonical conversations → token ids + loss mask.

- `conversation`: the canonical `Conversation` every format converts to.
- `formats`: readers for the formats people have (OpenAI chat, prompt/completion, Alpaca,
  ShareGPT, OpenAI DPO, CSV/JSONL with a column mapping), each a pure row → conversation function.
- `chat_template`: the one sandboxed chat-template renderer used by training, eval and serving.
- `tokenize`: conversation → `input_ids` + `labels` (-100 where not trained).
- `validate`: OpenAI-cookbook checks and more, with statistics.
- `demo`: the recipe-assistant demo data set the project generates itself.
"""
