/* The job record the plugin reads from slurmctld (the GRES each node of the job was given). */
#include <slurm/slurm.h>
