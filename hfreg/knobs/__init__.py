"""One module per knob: its forward hooks and its injector, ``inject(plan) -> list[Site]``, which
`hfreg.inject.apply_spec` calls with a `hfreg.state.Plan` for every patch (an injector returns [] where the spec
leaves its knob unset). A knob's field in `RegularizationConfig` names its module (`hfreg.config.knob`): in the
library, that field and the module are all a knob is (see the concepts page, *Adding a knob*). The
layer stack's five knobs (hidden, drop_path, layerdrop, embedding, activation) share `stack`, since their hooks share
each layer's state. The rates a module records (`PatchState.hook(..., knob=)`, `PatchState.live`) are what
`set_rate_factors` and `RateScheduler` move.
"""
