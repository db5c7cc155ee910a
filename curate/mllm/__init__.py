"""MLLM scoring (MLM-Filter's four metrics) and recaptioning, on transformers and vLLM.

Modules, one job each: ``prompts`` (versioned templates and chat rendering), ``parsing`` (score
grammar and parsing), ``inputs`` (image and text of a sample), ``backend_base`` / ``backend_hf`` /
``backend_vllm`` / ``backend_scripted`` (generation engines), ``score_stage`` and
``recaption_stage`` (the stages), ``tiny_model`` (offline random Qwen2-VL for tests and the demo).
Heavy libraries (torch, transformers, vllm) are imported only inside backends' ``load``.
"""
