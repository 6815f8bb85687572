/* Preprocessed by build.rs to read constants of the installed Slurm. */
#include <slurm/slurm.h>
#include <slurm/slurm_version.h>
flexmig_batch_script = SLURM_BATCH_SCRIPT;
flexmig_interactive_step = SLURM_INTERACTIVE_STEP;
flexmig_slurm_version = SLURM_VERSION_NUMBER;
