"""`llamalab demo --vision`: synthetic pictures (`shapes`), LLaVA's two stages onto SmolLM2-135M-Instruct (`run`),
held-out accuracy against chance and a blank picture (`score`)."""
