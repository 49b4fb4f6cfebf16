"""The names of the instrumented model's inputs and outputs: the contract between the rewriter
(`rewrite.instrument`, which makes them) and everything that runs an instrumented model
(`runtime`, `remote`, the Triton and KServe servers). A module of its own so that the runners
need not import the rewriter."""

MASK, TARGET, BASELINE = "nm_mask", "nm_target", "nm_baseline"
LOSS, GRAD_MASK, GRAD_INPUT, PROBS = "nm_loss", "nm_grad_mask", "nm_grad_input", "nm_probs"
XBAR = "nm_xbar"
