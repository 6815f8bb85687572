-- flexmig cli_filter.lua (srun, sbatch, salloc; CliFilterPlugins=lua): the same size-aware
-- rewrite as job_submit.lua for the requests job_submit never sees, namely steps inside an
-- allocation (`srun --gres=mig:2` in a batch script). Users can bypass a cli_filter;
-- job_submit.lua is the enforcement point for jobs.

local dir = (function()
  local src = debug.getinfo(1, "S").source or ""
  local d = src:match("^@(.*)/[^/]*$")
  if d then return d end
  local conf = os.getenv("SLURM_CONF")
  return (conf and conf:match("^(.*)/[^/]*$")) or "/etc/slurm"
end)()
local flexmig = dofile(dir .. "/flexmig_filter.lua")

function slurm_cli_setup_defaults(options, early_pass)
  return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, pack_offset)
  local gres = options["gres"]
  if gres == nil or not string.find(gres, "mig") then
    return slurm.SUCCESS
  end
  local policy, perr = flexmig.load_policy(dir)
  if not policy then
    slurm.log_error("flexmig: the cluster's MIG policy is broken (%s); tell your admin", perr)
    return slurm.ERROR
  end
  local other = flexmig.gpu_request(options["gpus"], options["gpus-per-node"], options["gpus-per-task"], options["gpus-per-socket"])
  local new, err = flexmig.rewrite(gres, policy, { other_gpu = other })
  if err then
    slurm.log_error("flexmig: %s", err)
    return slurm.ERROR
  end
  if new then
    slurm.log_debug("flexmig: --gres=%s -> --gres=%s", gres, new)
    options["gres"] = new
  end
  return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, job_id, step_id)
  return slurm.SUCCESS
end

return slurm.SUCCESS
