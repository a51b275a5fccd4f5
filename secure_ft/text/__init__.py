"""Text and models: what turns a raw text into a prediction, the same way in training, audits and serving.

``models``           load a base model offline-first (safetensors only), choose what trains, save it
``onnx_encoder``     the frozen encoder exported once and run by ONNX Runtime
``pooling``          mean pooling for sentence-transformers bases
``label_name_head``  a probe head that starts as a zero-shot classifier from the class names
``embedding_cache``  sentence embeddings cached inside one run directory
``text_front_end``   the front end every text passes before the tokenizer
``spelling``         the typo-correcting front end (SymSpell and its shipped dictionary)
``lexicon``          WordNet 3.0 and English stopwords from local files only
``augmentation``     perturbed copies of a training text (character edits, synonym swaps)
``text_classifier``  a trained model as it is served: raw text → front end → tokenizer → classifier
``snapshot_model``   a trained model built from verified bytes held in memory

May import: `secure_ft.records` and `secure_ft.errors`. Nothing here trains (that is
`secure_ft.training`). Exports nothing itself: import the module you need.
"""
