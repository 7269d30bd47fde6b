"""Planning: matrix.yaml -> validated, typed targets -> rendered Dockerfiles. Pure: no Docker, no network."""
