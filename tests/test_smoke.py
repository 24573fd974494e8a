def test_tiny_checkpoint_loads(tiny_checkpoint):
    from nitp_eval.models import load_model

    model, tok = load_model(tiny_checkpoint)
    out = model(**tok(["hello world"], return_tensors="pt"), output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
