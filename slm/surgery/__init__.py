"""Model surgery: LLaMA Pro block expansion, SOLAR depth up-scaling, merges. Streams tensor by tensor."""
