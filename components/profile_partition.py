"""Profile partition: validation's summary and drift's first pass over one partition of the
inputs."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from conveyor.components.images import BASE_IMAGE

__all__ = ["profile_partition"]


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def profile_partition(
    partition: dict,
    tested: Input[Artifact],
    schema: Input[Artifact],
    profile: Output[Artifact],
):
    """Reads one partition in batches, its rows once, and summarises them twice: what
    each of the schema's rules needs (counts, the first example rows, 8 bytes of hash per
    row for duplicate rows and keys), and, for drift, each tested column overall and per
    segment value (rows, values, minimum, maximum, the counts of up to 10,000 distinct
    values). Fails in one line, naming the file, when its columns are not the reference's,
    a numeric column holds text or infinities, or it cannot be read.

    Args:
        partition: One of plan_partitions' items: ``{"files", "offset", "rows"}``.
        tested: plan_partitions' ``tested``.
        schema: The schema the inputs are checked against, such as champion_reference's.
        profile: Output folder, merged by check_partitions: ``validation.json``, the
            validation summary, and ``drift.json``, the drift profile.
    """
    from pathlib import Path

    from conveyor.components.core.errors import step_errors
    from conveyor.components.core.monitoring.partitioned import profile_partition as run

    with step_errors("profile_partition"):
        rows = run(partition, Path(tested.path), Path(schema.path), Path(profile.path))
    profile.metadata["rows"] = rows
