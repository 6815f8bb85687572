-- flexmig job_submit.lua (slurmctld; JobSubmitPlugins=lua): the enforcement point of the
-- size-aware rule. Rewrites `--gres=mig:N` (job_desc.tres_per_node = "gres:mig:N") into
-- typed gpu requests per flexmig_policy.lua and refuses bad requests with a message the user
-- sees. Steps never pass through here: cli_filter.lua handles inner sruns.

local dir = (function()
  local src = debug.getinfo(1, "S").source or ""
  local d = src:match("^@(.*)/[^/]*$")
  if d then return d end
  local conf = os.getenv("SLURM_CONF")
  return (conf and conf:match("^(.*)/[^/]*$")) or "/etc/slurm"
end)()
local flexmig = dofile(dir .. "/flexmig_filter.lua")

local function filter(job_desc)
  if job_desc.tres_per_node == nil or not string.find(job_desc.tres_per_node, "mig") then
    return slurm.SUCCESS
  end
  local policy, perr = flexmig.load_policy(dir)
  if not policy then
    slurm.log_error("flexmig: %s", perr)
    slurm.log_user("flexmig: the cluster's MIG policy is broken (%s); tell your admin", perr)
    return slurm.ERROR
  end
  local other = flexmig.gpu_request(job_desc.tres_per_job, job_desc.tres_per_socket, job_desc.tres_per_task)
  local new, err = flexmig.rewrite(job_desc.tres_per_node, policy, { other_gpu = other })
  if err then
    slurm.log_user("flexmig: %s", err)
    return slurm.ERROR
  end
  if new then
    slurm.log_info("flexmig: job of uid %s: %s -> %s", tostring(job_desc.user_id), job_desc.tres_per_node, new)
    job_desc.tres_per_node = new
  end
  return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  return filter(job_desc)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return filter(job_desc)
end

return slurm.SUCCESS
