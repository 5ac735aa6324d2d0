"""raspicl's models in HuggingFace `transformers` and TransformerLens (docs/interop.md).

    gpt2form   the gpt2 form: a config and a state dict with TransformerLens names that both
               exports read; from_compiled (gpt2-target models), from_trained (ICLTransformer)
    hf         export_hf / hf_files: DIR/hf/ that transformers.GPT2Model loads unmodified;
               load_hf, load_readout, hf_predict (transformers); read_hf (safetensors + json)
    tlens      boot: a TransformerLens TransformerBridge over DIR/hf, raw weights; the hook
               names of raspicl's residual list; the prediction from a cache
    registers  RegisterNames: every residual row named by register from layout.json's records

Only safetensors, json and torch are needed to write an export; transformers and
transformer-lens (the `interop` and `dev` extras) are imported when a model is loaded.

Layer 8, interop (docs/index.md, "The source, in layers"): it may import the compiled model
and the layers below (today it reads only the runtime's schema, tensors and timeline), never
storage, the analyses or the command line.
"""
