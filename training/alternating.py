"""Alternating training of several networks: one phase trains while the others are fixed.

DeepAtlas (Xu & Niethammer, MICCAI 2019, §2.3 "Alternate training"): "we
alternately train one of the two networks while keeping the other fixed. We
use a 1:20 ratio between training steps for the segmentation and registration
networks, as the segmentation network converges faster."  §3 "Optimizer":
"Initial learning rates are 5e-4 for the registration network and 1e-4 for the
segmentation network for Semi-DA and DA. Learning rates decay by 0.2 at
various epochs across experiments."

Cooperating networks (Couteaux et al., §2.2): "The training is done in three
steps: we pre-train the segmentor with the segmentation loss only, the
registor with the registor loss and annotation masks as input, and then the
whole model with all three losses."  These are consecutive *stages*, not an
alternation inside every iteration: give each stage its own phase with
``steps`` = the stage's number of optimiser steps (one cycle = the whole run),
or train the stages with separate ``fit`` calls.  A phase may update several
networks (the third stage updates both); stop-gradients inside the loss keep
a network out of a loss term.

:class:`AlternatingModel` is a ``keras.Model`` that trains one *phase* per
batch.  A phase (:class:`Phase`) is a name, a number of consecutive optimiser
steps, what it updates (a network or a list of layers/variables), a loss
``f(data, training) -> tensor`` computed from the batch, and its own
optimiser.  Global step ``k`` runs phase ``alternation_schedule(pattern)(k)``;
the phase is chosen inside the compiled train function (``tf.switch_case``)
from an integer step counter kept as a non-trainable weight, so
``save_weights``, checkpoints and ``BackupAndRestore`` store where the run is
in the cycle and a resumed run continues mid-cycle.  The logs hold ``loss``
(mean over the epoch's steps, whatever their phase), ``loss_<phase>`` (mean
over the epoch's steps of that phase, NaN if none ran) and ``steps_<phase>``
(optimiser steps of that phase since the start of training).

DeepAtlas-style usage with the shared training loop::

    import keras
    from regseg.training.alternating import AlternatingModel, Phase
    from regseg.training.distribute import make_strategy
    from regseg.training.fit import fit, step_decay

    strategy = make_strategy()
    with strategy.scope():
        seg_net, reg_net = build_segmentation_net(), build_registration_net()  # built models

        def seg_loss(data, training):   # eq. 2 (supervised + anatomy loss), reg_net fixed
            ...                         # -> scalar, mean over this replica's samples
        def reg_loss(data, training):   # eq. 1 (similarity + regularity + anatomy), seg_net fixed
            ...

        model = AlternatingModel(
            networks={"segmentation": seg_net, "registration": reg_net},
            phases=[Phase("segmentation", 1, seg_net, seg_loss, keras.optimizers.Adam(1e-4)),
                    Phase("registration", 20, reg_net, reg_loss, keras.optimizers.Adam(5e-4))],
            relative_learning_rates=True)      # fit's schedule = factor of 1e-4 / 5e-4
        model.compile()
    fit(model, make_train_dataset, run_dir, epochs=E, steps_per_epoch=S,
        schedule=step_decay(1.0, every=E_DECAY, factor=0.2))
    seg_net.save_weights(...); reg_net.save_weights(...)

Learning rates: ``model.optimizer`` is a :class:`PhaseOptimizers` whose
``optimizers`` attribute Keras' ``LearningRateScheduler`` (``fit``'s
``schedule``) and ``TensorBoard`` recognise: the schedule sets every phase
optimiser's rate (or, with ``relative_learning_rates=True``, multiplies its
initial rate) and the rates are logged as ``learning_rate_<optimizer name>``
(name the optimisers after the phases for readable logs).  Keras callbacks
that use ``model.optimizer.learning_rate`` directly (``ReduceLROnPlateau``)
have no effect on the phases.

Distribution: under ``tf.distribute.MirroredStrategy`` each replica computes
the phase loss on its share of the global batch; a scalar loss is taken to be
the mean over the replica's samples and is divided by the number of replicas
(as Keras does), a vector of per-sample losses is reduced with
``tf.nn.compute_average_loss`` (sum over the replica / global batch size).
The optimisers sum the gradients over the replicas, so the update is the
gradient of the mean loss over the global batch, whatever the number of
replicas.  tf.distribute does not allow synchronisation points
(``apply_gradients``, updates of mirrored variables) inside control flow in a
replica function, so ``fit``'s train function switches *around*
``strategy.run(phase step)`` (:meth:`AlternatingModel.make_train_function`);
:meth:`AlternatingModel.train_step` (the switch inside the replica function)
is for use without a strategy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

__all__ = ["AlternatingModel", "AlternationSchedule", "Phase", "PhaseOptimizers",
           "alternation_schedule"]


# --------------------------------------------------------------------------- pure-python schedule
class AlternationSchedule:
    """Which phase runs at global optimiser step ``k`` (0-based) of a repeating cycle.

    The cycle runs ``pattern[name]`` consecutive steps of every phase, in the
    order given, and repeats: ``{"segmentation": 1, "registration": 20}`` runs
    step 0 of every 21 as segmentation and the next 20 as registration
    (DeepAtlas §2, 1:20 segmentation:registration).
    """

    def __init__(self, pattern):
        items = list(pattern.items()) if isinstance(pattern, Mapping) else list(pattern)
        if not items:
            raise ValueError("alternation pattern is empty: give at least one (phase name, steps)")
        names = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"alternation pattern entries must be (name, steps) pairs, got {item!r}")
            name, steps = item
            if not isinstance(name, str) or not name or not name.isidentifier():
                raise ValueError(f"phase name must be a non-empty identifier string "
                                 f"(it names the logs loss_<name>, steps_<name>), got {name!r}")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"phase {name!r}: number of consecutive steps must be an int >= 1, "
                                 f"got {steps!r}")
            if name in names:
                raise ValueError(f"phase name {name!r} appears twice in the alternation pattern")
            names.append(name)
        self.names: tuple[str, ...] = tuple(names)
        self.steps: tuple[int, ...] = tuple(int(s) for _, s in items)
        self.cycle_length: int = sum(self.steps)
        # ends[i]: first position in the cycle after phase i
        self.ends: tuple[int, ...] = tuple(sum(self.steps[:i + 1]) for i in range(len(self.steps)))

    def index(self, k: int) -> int:
        """Index (in pattern order) of the phase that runs at global step ``k >= 0``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"global step must be an int >= 0, got {k!r}")
        r = k % self.cycle_length
        return sum(1 for end in self.ends if r >= end)

    def __call__(self, k: int) -> str:
        """Name of the phase that runs at global step ``k >= 0``."""
        return self.names[self.index(k)]

    def counts(self, n_steps: int) -> dict[str, int]:
        """Steps run by every phase during global steps ``0 .. n_steps-1``."""
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"number of steps must be an int >= 0, got {n_steps!r}")
        cycles, rest = divmod(n_steps, self.cycle_length)
        out = {}
        start = 0
        for name, steps in zip(self.names, self.steps):
            out[name] = cycles * steps + min(max(rest - start, 0), steps)
            start += steps
        return out

    def __repr__(self):
        inner = ", ".join(f"{n!r}: {s}" for n, s in zip(self.names, self.steps))
        return f"AlternationSchedule({{{inner}}})"


def alternation_schedule(pattern) -> AlternationSchedule:
    """Return the :class:`AlternationSchedule` of ``pattern`` (pure Python).

    Args:
        pattern: ``{phase name: consecutive steps}`` (insertion order is the
            cycle order) or a sequence of ``(name, steps)`` pairs.
    Returns:
        a callable ``k -> phase name`` with ``.index(k)``, ``.counts(n_steps)``,
        ``.names``, ``.steps`` and ``.cycle_length``.
    Raises:
        ValueError: empty pattern, duplicate or non-identifier names, steps
            not a positive int.

    >>> s = alternation_schedule({"segmentation": 1, "registration": 20})
    >>> [s(k) for k in (0, 1, 20, 21, 22)]
    ['segmentation', 'registration', 'registration', 'segmentation', 'registration']
    >>> s.counts(43)
    {'segmentation': 3, 'registration': 40}
    """
    return AlternationSchedule(pattern)


# --------------------------------------------------------------------------- phases
@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of an alternating run.

    Attributes:
        name: identifier; logs ``loss_<name>`` and ``steps_<name>``.
        steps: consecutive optimiser steps of this phase in every cycle (>= 1).
        train: what the phase updates: a built ``keras.Layer``/``keras.Model``
            (its trainable variables at ``AlternatingModel`` construction) or a
            sequence of layers and/or variables.  Everything else is fixed
            during the phase (no gradient is applied to it).
        loss: ``f(data, training) -> tensor``: ``data`` is the batch as the
            dataset yields it (this replica's share under a distribution
            strategy), ``training`` a Python bool.  Returns a float scalar (the
            mean over the replica's samples, including any regularisation
            term; layer ``.losses`` are not added automatically) or a vector
            ``(batch,)`` of per-sample losses (averaged over the global
            batch with ``tf.nn.compute_average_loss``).
        optimizer: this phase's own ``keras.optimizers.Optimizer`` (not shared
            with another phase).
    """

    name: str
    steps: int
    train: Any
    loss: Callable[[Any, bool], Any]
    optimizer: keras.optimizers.Optimizer


def _as_phase(spec) -> Phase:
    if isinstance(spec, Phase):
        return spec
    if isinstance(spec, Mapping):
        try:
            return Phase(**spec)
        except TypeError as e:
            raise ValueError(f"bad phase spec {spec!r}: {e}") from None
    if isinstance(spec, (tuple, list)) and len(spec) == 5:
        return Phase(*spec)
    raise ValueError("a phase must be a Phase, a dict with keys name/steps/train/loss/optimizer or a "
                     f"(name, steps, train, loss, optimizer) tuple; got {spec!r}")


def _initial_learning_rate(phase) -> float:
    lr = phase.optimizer.get_config()["learning_rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"phase {phase.name!r}: relative learning rates need a number as the "
                         f"optimizer's initial learning rate, got {lr!r}")
    return float(lr)


def _collect_variables(phase_name, train) -> list:
    """Trainable variables of ``train`` (a layer, a variable, or a sequence of those)."""
    items = [train] if isinstance(train, (keras.Layer, keras.Variable)) else train
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"phase {phase_name!r}: `train` must be a keras layer/model, a variable or a "
                         f"sequence of those, got {type(train).__name__}")
    out, seen = [], set()
    for item in items:
        if isinstance(item, keras.Layer):
            if not item.built:
                raise ValueError(f"phase {phase_name!r}: layer {item.name!r} is not built; build the "
                                 "networks (e.g. call them on a batch) before AlternatingModel(...)")
            variables = list(item.trainable_variables)
        elif isinstance(item, keras.Variable):
            if not item.trainable:
                raise ValueError(f"phase {phase_name!r}: variable {item.path!r} is not trainable")
            variables = [item]
        else:
            raise ValueError(f"phase {phase_name!r}: cannot train {item!r} "
                             "(expected a keras layer/model or keras variable)")
        for v in variables:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
    if not out:
        raise ValueError(f"phase {phase_name!r} has no trainable variables to update")
    return out


class _Held:
    """Plain holder: Keras does not track what is stored in it."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _LearningRateView:
    """What learning-rate callbacks see of one phase optimiser (``name``, ``learning_rate``).

    Reading gives the optimiser's actual rate; assigning ``value`` sets it to
    ``value * scale`` (``scale`` = its initial rate in relative mode, else 1).
    """

    def __init__(self, optimizer, scale):
        self._optimizer, self._scale = optimizer, scale

    @property
    def name(self):
        return self._optimizer.name

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._optimizer.learning_rate = float(value) * self._scale


class PhaseOptimizers(keras.optimizers.Optimizer):
    """``model.optimizer`` of an :class:`AlternatingModel`; applies no gradient itself.

    Keras' ``LearningRateScheduler`` (hence the shared ``fit``'s
    ``schedule``) and ``TensorBoard`` callbacks recognise its ``optimizers``
    attribute: they set / log every phase optimiser's learning rate (logged as
    ``learning_rate_<optimizer name>``).  With ``scales`` (relative learning
    rates) a rate set by such a callback is multiplied by the optimiser's scale.  Its
    ``iterations`` counts the train steps of all phases (TensorBoard's step
    axis).  The phase optimisers' state is saved with the model (attribute
    ``phase_optimizers`` of :class:`AlternatingModel`), not here.

    Args:
        optimizers: the phase optimisers.
        variables: for each optimiser, the variables it updates.
        scales: for each optimiser, the factor applied to a rate set through
            ``optimizers`` (default 1: absolute rates).
    """

    def __init__(self, optimizers, variables, scales=None, name="phase_optimizers"):
        super().__init__(learning_rate=0.0, name=name)
        optimizers = list(optimizers)
        scales = [1.0] * len(optimizers) if scales is None else [float(x) for x in scales]
        self._held = _Held(optimizers=optimizers, phase_variables=list(variables),
                           views=[_LearningRateView(o, x) for o, x in zip(optimizers, scales)])

    @property
    def optimizers(self):
        """Learning-rate views (``name``, ``learning_rate``) of the phase optimisers."""
        return list(self._held.views)

    def build(self, var_list):
        # own state: `iterations` and the unused learning rate; the phase
        # optimisers are built by AlternatingModel.compile on their own variables
        super().build([])

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError("PhaseOptimizers applies no gradients; the phase optimisers do")

    def finalize_variable_values(self, var_list):
        # e.g. EMA weights of the phase optimisers (called by Keras at the end of fit)
        for opt, variables in zip(self._held.optimizers, self._held.phase_variables):
            opt.finalize_variable_values(variables)

    def get_config(self):
        raise NotImplementedError("PhaseOptimizers is not serialisable; rebuild the AlternatingModel")


class _PhaseMean(keras.metrics.Mean):
    """Mean whose result is NaN when nothing was accumulated (phase did not run)."""

    def result(self):
        return tf.where(self.count > 0, super().result(), tf.constant(math.nan, self.dtype))


# --------------------------------------------------------------------------- the model
class AlternatingModel(keras.Model):
    """Train several networks in alternation, one phase per optimiser step.

    Args:
        networks: the networks trained (``{name: model}`` or a sequence of
            models); their weights are this model's weights (``save_weights``,
            checkpoints).  Every phase variable must belong to one of them.
        phases: sequence of :class:`Phase` (or ``(name, steps, train, loss,
            optimizer)`` tuples / dicts), in cycle order.
        relative_learning_rates: if True, a learning rate set by Keras'
            ``LearningRateScheduler`` (the shared ``fit``'s ``schedule``) is a
            factor of every phase optimiser's initial rate (DeepAtlas: Adam
            1e-4 segmentation, 5e-4 registration, both decayed by 0.2 ->
            ``schedule=step_decay(1.0, every, 0.2)``); if False (default) it
            is the rate of every phase optimiser.
        name: model name.

    Create it, like the networks and optimisers, inside the distribution
    strategy's scope, then call :meth:`compile` (no loss, no optimizer: the
    phases carry them).  ``fit`` then runs global step ``k`` with the phase
    ``alternation_schedule({p.name: p.steps for p in phases})(k)``.

    State (non-trainable int64 weights, saved with the model): ``step`` (global
    optimiser steps run) and ``steps_<phase>`` for every phase.  The per-phase
    counters are also reported in the logs.

    Data: each batch is passed unchanged to the running phase's loss, so the
    phases share one input pipeline (each batch is used by one phase).

    Raises (at construction):
        ValueError: no phase, bad or duplicate phase name, steps not an int >=
            1, a phase without trainable variables or with a variable outside
            ``networks``, an optimiser shared by two phases or not a Keras
            optimiser or already built, a loss that is not callable, unbuilt
            networks; ``relative_learning_rates`` with an optimiser whose rate
            is a schedule.
    """

    def __init__(self, networks, phases, *, relative_learning_rates=False, name="alternating",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        nets = list(networks.values()) if isinstance(networks, Mapping) else list(networks)
        if not nets or not all(isinstance(n, keras.Layer) for n in nets):
            raise ValueError("`networks` must be a non-empty dict or sequence of keras models/layers")
        for n in nets:
            if not n.built:
                raise ValueError(f"network {n.name!r} is not built; build it (e.g. call it on a "
                                 "batch) before AlternatingModel(...)")
        self.networks = nets
        phases = [_as_phase(p) for p in phases]
        self.schedule = alternation_schedule([(p.name, p.steps) for p in phases])
        owned = {id(v) for n in nets for v in n.trainable_variables}
        optimizers_seen = set()
        phase_vars = []
        for p in phases:
            if not callable(p.loss):
                raise ValueError(f"phase {p.name!r}: loss must be callable f(data, training)")
            if not isinstance(p.optimizer, keras.optimizers.Optimizer):
                raise ValueError(f"phase {p.name!r}: optimizer must be a keras optimizer instance, "
                                 f"got {p.optimizer!r}")
            if id(p.optimizer) in optimizers_seen:
                raise ValueError(f"phase {p.name!r}: its optimizer is already used by another phase; "
                                 "give every phase its own optimizer instance")
            optimizers_seen.add(id(p.optimizer))
            if p.optimizer.built:
                raise ValueError(f"phase {p.name!r}: optimizer {p.optimizer.name!r} is already built; "
                                 "give a fresh one (it is built on the phase's variables by compile)")
            variables = _collect_variables(p.name, p.train)
            stray = [v.path for v in variables if id(v) not in owned]
            if stray:
                raise ValueError(f"phase {p.name!r} updates variables outside `networks` "
                                 f"(they would not be saved): {stray[:5]}")
            phase_vars.append(variables)
        self._phases = phases
        # held outside Keras' attribute tracking (the variables belong to `networks`)
        scales = [1.0] * len(phases)
        if relative_learning_rates:
            scales = [_initial_learning_rate(p) for p in phases]
        self._held = _Held(variables=phase_vars, lr_scales=scales)
        self.phase_optimizers = [p.optimizer for p in phases]
        self.step = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                    aggregation="only_first_replica", name="step")
        self.phase_steps = [
            self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                            aggregation="only_first_replica", name=f"steps_{p.name}")
            for p in phases]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.phase_loss_trackers = [_PhaseMean(name=f"loss_{p.name}") for p in phases]
        self._ends = [int(e) for e in self.schedule.ends]
        self.built = True

    # ------------------------------------------------------------------ properties
    @property
    def phases(self) -> tuple[Phase, ...]:
        return tuple(self._phases)

    def phase_variables(self, name: str) -> list:
        """The variables updated by phase ``name``."""
        return list(self._held.variables[self.schedule.names.index(name)])

    def step_counts(self) -> dict[str, int]:
        """``{"step": global steps, <phase>: steps of that phase}`` as Python ints."""
        out = {"step": int(keras.ops.convert_to_numpy(self.step))}
        for p, v in zip(self._phases, self.phase_steps):
            out[p.name] = int(keras.ops.convert_to_numpy(v))
        return out

    @property
    def metrics(self):
        return [self.loss_tracker, *self.phase_loss_trackers]

    def call(self, inputs, training=False):
        raise NotImplementedError("AlternatingModel only trains its networks; call the networks "
                                  "themselves for inference")

    # ------------------------------------------------------------------ compile
    def compile(self, steps_per_execution=1, jit_compile=False, run_eagerly=False, **kwargs):
        """Compile for ``fit``/``evaluate``; the phases carry losses and optimisers.

        Builds every phase optimiser on its phase's variables (call inside the
        strategy scope).  ``jit_compile`` defaults to False (XLA is untested
        with the phase switch under a distribution strategy).

        Raises:
            ValueError: ``optimizer``, ``loss``, ``metrics`` or other keyword
                arguments passed (they belong to the phases).
        """
        if kwargs:
            raise ValueError(f"AlternatingModel.compile takes no {sorted(kwargs)}: every phase has "
                             "its own loss and optimizer")
        container = PhaseOptimizers(self.phase_optimizers, self._held.variables,
                                    scales=self._held.lr_scales)
        super().compile(optimizer=container, loss=None, steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, run_eagerly=run_eagerly)
        container.build([])
        for opt, variables in zip(self.phase_optimizers, self._held.variables):
            if not opt.built:
                opt.build(variables)

    # ------------------------------------------------------------------ steps
    def _phase_index(self):
        """Index of the phase of the current global step (int32 scalar tensor)."""
        r = tf.math.floormod(tf.convert_to_tensor(self.step.value), self.schedule.cycle_length)
        return tf.reduce_sum(tf.cast(r >= tf.constant(self._ends, tf.int64), tf.int32))

    @staticmethod
    def _reduce_loss(value, phase_name):
        """(loss to differentiate, replica-local mean for the logs) from a phase loss."""
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating:
            raise ValueError(f"phase {phase_name!r}: loss must be a float tensor, got {value.dtype}")
        if value.shape.rank == 0:
            # mean over this replica's samples -> its share of the global-batch mean
            # (as keras.src.losses.loss.scale_loss_for_distribution does)
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            return value * tf.cast(1.0 / replicas, value.dtype), value
        if value.shape.rank == 1:
            return tf.nn.compute_average_loss(value), tf.reduce_mean(value)
        raise ValueError(f"phase {phase_name!r}: loss must be a scalar or a vector (batch,) of "
                         f"per-sample losses, got shape {value.shape}")

    def _phase_step(self, i, data):
        """One optimiser step of phase ``i`` on ``data`` (replica context); returns the logs."""
        phase, variables = self._phases[i], self._held.variables[i]
        with tf.GradientTape() as tape:
            loss, local = self._reduce_loss(phase.loss(data, True), phase.name)
            scaled = phase.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        if all(g is None for g in grads):
            raise ValueError(f"phase {phase.name!r}: its loss does not depend on any of its variables")
        phase.optimizer.apply_gradients(zip(grads, variables))
        self.phase_steps[i].assign_add(1)
        self.step.assign_add(1)
        self.optimizer.iterations.assign_add(1)
        local = tf.cast(local, "float32")
        self.phase_loss_trackers[i].update_state(local)
        self.loss_tracker.update_state(local)
        return self._logs(with_steps=True)

    def train_step(self, data):
        """One optimiser step of the phase that the step counter selects.

        ``tf.switch_case`` on the step counter, in the current (replica)
        context.  Valid without a distribution strategy; under
        ``MirroredStrategy`` tf.distribute forbids synchronisation points
        (``apply_gradients``, updates of mirrored variables) inside control
        flow in replica context, so ``fit`` uses :meth:`make_train_function`,
        which switches *around* ``strategy.run`` of :meth:`_phase_step`
        (same per-phase step).

        Args:
            data: one batch (any structure), passed to the phase's loss.
        Returns:
            logs ``{"loss", "loss_<phase>"..., "steps_<phase>"...}``.
        """
        branches = [functools.partial(self._phase_step, i, data) for i in range(len(self._phases))]
        return tf.switch_case(self._phase_index(), branches)

    def make_train_function(self, force=False):
        """Build ``self.train_function(iterator) -> logs`` used by ``fit``.

        One compiled step: ``tf.switch_case(phase of the step counter,
        [strategy.run(phase step i, data)])``, the phase switch in
        cross-replica context so that every phase's gradient all-reduce and
        variable updates sit at the top level of its ``strategy.run``.  With
        ``steps_per_execution > 1`` the steps are looped in Python.
        """
        if self.train_function is not None and not force:
            return self.train_function
        strategy = self.distribute_strategy

        def reduce(value):
            if not isinstance(value, tf.distribute.DistributedValues):
                return value
            first = strategy.experimental_local_results(value)[0]
            if first.dtype.is_integer:  # counters: identical on every replica
                return first
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)

        def run_phase(i, data):
            logs = strategy.run(functools.partial(self._phase_step, i), args=(data,))
            return {k: reduce(v) for k, v in logs.items()}

        def one_step(data):
            branches = [functools.partial(run_phase, i, data) for i in range(len(self._phases))]
            return tf.switch_case(self._phase_index(), branches)

        if not self.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=self.jit_compile)

        def train_function(iterator):
            logs = None
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                for _ in range(self.steps_per_execution):
                    optional = iterator.get_next_as_optional()
                    if not optional.has_value():
                        break
                    logs = one_step(optional.get_value())
            else:
                for _, data in zip(range(self.steps_per_execution), iterator):
                    logs = one_step(data)
            if logs is None:
                raise StopIteration
            return logs

        self.train_function = train_function
        return train_function

    def test_step(self, data):
        """Every phase's loss on the batch (``training=False``), no update.

        Logs ``loss_<phase>`` and ``loss``, the phases' losses weighted by
        their steps per cycle (what the training ``loss`` averages to).
        """
        total = 0.0
        for i, phase in enumerate(self._phases):
            _, local = self._reduce_loss(phase.loss(data, False), phase.name)
            local = tf.cast(local, "float32")
            self.phase_loss_trackers[i].update_state(local)
            total += local * (phase.steps / self.schedule.cycle_length)
        self.loss_tracker.update_state(total)
        return self._logs(with_steps=False)

    def _logs(self, with_steps):
        logs = {m.name: m.result() for m in self.metrics}
        if with_steps:
            for p, v in zip(self._phases, self.phase_steps):
                logs[f"steps_{p.name}"] = tf.identity(v.value)
        return logs

    def get_config(self):
        raise NotImplementedError("AlternatingModel holds Python loss functions and is not "
                                  "serialisable as a config; save/load its weights instead")
