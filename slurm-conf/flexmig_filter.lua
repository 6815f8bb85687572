-- flexmig: the size-aware rewrite of `--gres=mig:N`, shared by job_submit.lua (slurmctld,
-- enforced) and cli_filter.lua (srun/sbatch/salloc, the only place inner sruns are seen).
--
-- A node's MIG leaves are Slurm `gpu` GRES typed by profile (gres.conf written by
-- `flexmig-gres-helper gres-conf`), in an order that puts the double leaves first and spreads
-- the small ones across GPUs. The rule (from the Flex-MIG paper):
--   mig:1            -> gpu:1 (untyped: the lowest free index, i.e. a double leaf while one is
--                       free, else a small one); with single_prefers_double = false, gpu:<small>:1
--   mig:N, N >= 2    -> gpu:<small>:N (mixing sizes gains nothing: the slowest rank sets the pace)
--   mig:N, N > small -> every small leaf plus doubles for the rest (gpu:<small>:S,gpu:<double>:N-S)
-- Its parameters live in flexmig_policy.lua only.
--
-- Pure Lua 5.1, no Slurm calls: unit-tested by slurm-conf/tests/test_filters.lua.

local M = {}

local function is_int(v)
  return type(v) == "number" and v == math.floor(v)
end

-- The directory this file (or the calling script) sits in, else SLURM_CONF's, else /etc/slurm.
function M.script_dir(level)
  local info = debug and debug.getinfo and debug.getinfo((level or 1) + 1, "S")
  local src = info and info.source or ""
  local d = src:match("^@(.*)/[^/]*$")
  if d then return d end
  local conf = os.getenv("SLURM_CONF")
  if conf then
    d = conf:match("^(.*)/[^/]*$")
    if d then return d end
  end
  return "/etc/slurm"
end

-- Checks a policy table; returns it, or nil and a message.
function M.check_policy(p, origin)
  origin = origin or "flexmig_policy.lua"
  if type(p) ~= "table" then
    return nil, origin .. " must return a table of policy parameters"
  end
  local known = { small_type = true, double_type = true, leaves_per_node = true,
                  small_leaves_per_node = true, single_prefers_double = true }
  for k, _ in pairs(p) do
    if not known[k] then
      return nil, origin .. ": unknown parameter '" .. tostring(k) .. "' (known: small_type, double_type, leaves_per_node, small_leaves_per_node, single_prefers_double)"
    end
  end
  if type(p.small_type) ~= "string" or p.small_type == "" then
    return nil, origin .. ": small_type must be the GRES type of the small leaves, e.g. \"1g.10gb\""
  end
  if p.double_type ~= nil and (type(p.double_type) ~= "string" or p.double_type == "") then
    return nil, origin .. ": double_type must be a GRES type such as \"1g.20gb\", or nil"
  end
  if not is_int(p.leaves_per_node) or p.leaves_per_node < 1 then
    return nil, origin .. ": leaves_per_node must be a positive integer"
  end
  if not is_int(p.small_leaves_per_node) or p.small_leaves_per_node < 1
     or p.small_leaves_per_node > p.leaves_per_node then
    return nil, origin .. ": small_leaves_per_node must be a positive integer no larger than leaves_per_node"
  end
  if p.double_type == nil and p.small_leaves_per_node ~= p.leaves_per_node then
    return nil, origin .. ": without double_type every leaf is small: small_leaves_per_node must equal leaves_per_node"
  end
  if p.single_prefers_double ~= nil and type(p.single_prefers_double) ~= "boolean" then
    return nil, origin .. ": single_prefers_double must be true or false"
  end
  return p
end

-- Loads <dir>/flexmig_policy.lua; returns the policy or nil and a message.
function M.load_policy(dir)
  local path = dir .. "/flexmig_policy.lua"
  local chunk, err = loadfile(path)
  if not chunk then
    return nil, "cannot load the policy " .. path .. ": " .. tostring(err) ..
      " (write it with `flexmig-gres-helper gres-conf --policy " .. path .. "`)"
  end
  local ok, p = pcall(chunk)
  if not ok then
    return nil, "the policy " .. path .. " failed: " .. tostring(p)
  end
  return M.check_policy(p, path)
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Splits a GRES list ("gres:mig:6,gres:foo:1", "mig:6", "gres/gpu:1g.5gb:2") into entries
-- { prefix = "gres:" | "gres/" | "", name =, type = nil|string, count = string|nil }.
function M.parse(spec)
  local out = {}
  for item in string.gmatch(spec, "[^,]+") do
    item = trim(item)
    if item ~= "" then
      local prefix = ""
      local rest = item
      if rest:sub(1, 5) == "gres:" or rest:sub(1, 5) == "gres/" then
        prefix = rest:sub(1, 5)
        rest = rest:sub(6)
      end
      local parts = {}
      for p in string.gmatch(rest, "[^:]+") do parts[#parts + 1] = p end
      local e = { prefix = prefix, name = parts[1] or "", raw = item }
      if #parts == 2 then
        if parts[2]:match("^%d+$") then e.count = parts[2] else e.type = parts[2] end
      elseif #parts >= 3 then
        e.type = parts[2]
        e.count = parts[3]
      end
      out[#out + 1] = e
    end
  end
  return out
end

local function fmt(prefix, typ, n)
  if typ then
    return prefix .. "gpu:" .. typ .. ":" .. n
  end
  return prefix .. "gpu:" .. n
end

-- Rewrites a GRES list per the policy.
-- opts.other_gpu: a string naming another GPU request of the job (--gpus=2), or nil.
-- Returns: new_spec (changed), or nil (nothing to do), or nil, message (refuse).
function M.rewrite(spec, policy, opts)
  opts = opts or {}
  if spec == nil or spec == "" then return nil end
  local entries = M.parse(spec)
  local mig, gpu
  for _, e in ipairs(entries) do
    if e.name == "mig" then
      if mig then
        return nil, "--gres names mig twice (" .. spec .. "); ask once: --gres=mig:N"
      end
      mig = e
    elseif e.name == "gpu" then
      gpu = e
    end
  end
  if not mig then return nil end
  if gpu or opts.other_gpu then
    return nil, "--gres=mig:N cannot be combined with another GPU request (" ..
      (gpu and gpu.raw or opts.other_gpu) .. "): mig:N already picks the MIG leaves; drop the gpu request, or use --gres=gpu:<profile>:N alone"
  end
  if mig.type then
    return nil, "--gres=" .. mig.raw .. ": mig takes a count only (--gres=mig:N); for one leaf size use --gres=gpu:" .. mig.type .. ":N"
  end
  local n = 1
  if mig.count then
    if not mig.count:match("^%d+$") then
      return nil, "--gres=" .. mig.raw .. ": the leaf count must be a whole number, e.g. --gres=mig:4"
    end
    n = tonumber(mig.count)
  end
  if n == 0 then
    return nil, "--gres=mig:0 asks for no MIG leaf; ask for --gres=mig:1 or more, or leave --gres out"
  end
  if n > policy.leaves_per_node then
    return nil, string.format(
      "--gres=mig:%d asks for %d MIG leaves per node, but a node has %d; ask for mig:%d or fewer per node and more nodes (-N)",
      n, n, policy.leaves_per_node, policy.leaves_per_node)
  end
  local repl
  if n == 1 then
    if policy.double_type and policy.single_prefers_double ~= false then
      repl = fmt(mig.prefix, nil, 1)
    else
      repl = fmt(mig.prefix, policy.small_type, 1)
    end
  elseif n <= policy.small_leaves_per_node then
    repl = fmt(mig.prefix, policy.small_type, n)
  else
    local s = policy.small_leaves_per_node
    repl = fmt(mig.prefix, policy.small_type, s) .. "," .. fmt(mig.prefix, policy.double_type, n - s)
  end
  local out = {}
  for _, e in ipairs(entries) do
    if e == mig then out[#out + 1] = repl else out[#out + 1] = e.raw end
  end
  return table.concat(out, ",")
end

-- The first of a list of TRES/option strings that asks for GPUs, or nil.
function M.gpu_request(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" and v ~= "" and v ~= "0" and v ~= "(null)" then
      if v:find("gpu") or v:match("^%d") then
        return v
      end
    end
  end
  return nil
end

return M
