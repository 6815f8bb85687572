-- Unit tests of flexmig's Lua filters with plain lua5.1 and a mocked `slurm` table.
-- Run: lua5.1 slurm-conf/tests/test_filters.lua   (exit 0 when every test passes)

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local confdir = here .. "/.."

local logs = {}
slurm = {
  SUCCESS = 0, ERROR = -1,
  log_user = function(f, ...) logs[#logs + 1] = { "user", string.format(f, ...) } end,
  log_info = function(f, ...) logs[#logs + 1] = { "info", string.format(f, ...) } end,
  log_error = function(f, ...) logs[#logs + 1] = { "error", string.format(f, ...) } end,
  log_debug = function(f, ...) logs[#logs + 1] = { "debug", string.format(f, ...) } end,
}

local flexmig = dofile(confdir .. "/flexmig_filter.lua")
dofile(confdir .. "/job_submit.lua")
local job_submit, job_modify = slurm_job_submit, slurm_job_modify
dofile(confdir .. "/cli_filter.lua")

local failed, passed = 0, 0
local function test(name, f)
  logs = {}
  local ok, err = pcall(f)
  if ok then passed = passed + 1 else
    failed = failed + 1
    io.stderr:write("FAIL " .. name .. ": " .. tostring(err) .. "\n")
  end
end
local function eq(a, b, what)
  if a ~= b then error((what or "value") .. ": expected " .. tostring(b) .. ", got " .. tostring(a), 2) end
end
local function has(s, sub)
  if not s or not string.find(s, sub, 1, true) then error("expected '" .. tostring(s) .. "' to contain '" .. sub .. "'", 2) end
end
local function last_log(kind)
  for i = #logs, 1, -1 do if logs[i][1] == kind then return logs[i][2] end end
end

local P = { small_type = "1g.10gb", double_type = "1g.20gb", leaves_per_node = 14,
            small_leaves_per_node = 12, single_prefers_double = true }
local P7 = { small_type = "1g.5gb", double_type = "1g.10gb", leaves_per_node = 7, small_leaves_per_node = 6 }
local A30 = { small_type = "1g.6gb", leaves_per_node = 4, small_leaves_per_node = 4 }

test("mig:1 prefers the double leaf through an untyped request", function()
  eq(flexmig.rewrite("gres:mig:1", P), "gres:gpu:1")
  eq(flexmig.rewrite("mig:1", P), "gpu:1")
  eq(flexmig.rewrite("mig", P), "gpu:1")
end)

test("mig:1 takes a small leaf when the policy says so or there is no double", function()
  local p = {}; for k, v in pairs(P) do p[k] = v end
  p.single_prefers_double = false
  eq(flexmig.rewrite("mig:1", p), "gpu:1g.10gb:1")
  eq(flexmig.rewrite("mig:1", A30), "gpu:1g.6gb:1")
end)

test("mig:N with N >= 2 takes small leaves", function()
  eq(flexmig.rewrite("gres:mig:6", P), "gres:gpu:1g.10gb:6")
  eq(flexmig.rewrite("gres/mig:2", P), "gres/gpu:1g.10gb:2")
  eq(flexmig.rewrite("mig:12", P), "gpu:1g.10gb:12")
  eq(flexmig.rewrite("mig:4", A30), "gpu:1g.6gb:4")
end)

test("beyond the small leaves every small plus doubles", function()
  eq(flexmig.rewrite("mig:13", P), "gpu:1g.10gb:12,gpu:1g.20gb:1")
  eq(flexmig.rewrite("mig:7", P7), "gpu:1g.5gb:6,gpu:1g.10gb:1")
end)

test("other GRES are kept", function()
  eq(flexmig.rewrite("gres:mig:3,gres:foo:1", P), "gres:gpu:1g.10gb:3,gres:foo:1")
  eq(flexmig.rewrite("gres:foo:1", P), nil)
  eq(flexmig.rewrite("gres:gpu:1g.10gb:2", P), nil)
  eq(flexmig.rewrite(nil, P), nil)
end)

test("bad requests are refused with a clear message", function()
  local _, e = flexmig.rewrite("mig:0", P); has(e, "mig:0 asks for no MIG leaf")
  _, e = flexmig.rewrite("mig:8", P7); has(e, "asks for 8 MIG leaves per node, but a node has 7")
  _, e = flexmig.rewrite("mig:15", P); has(e, "a node has 14")
  _, e = flexmig.rewrite("mig:2,gpu:1", P); has(e, "cannot be combined with another GPU request (gpu:1)")
  _, e = flexmig.rewrite("mig:2", P, { other_gpu = "gres:gpu:2" }); has(e, "cannot be combined")
  _, e = flexmig.rewrite("mig:1g.5gb:2", P); has(e, "mig takes a count only")
  _, e = flexmig.rewrite("mig:x2", P); has(e, "mig takes a count only")
  _, e = flexmig.rewrite("mig:2,mig:3", P); has(e, "mig twice")
end)

test("policy checks", function()
  eq(flexmig.check_policy(P), P)
  local _, e = flexmig.check_policy({ small_type = "1g.5gb", leaves_per_node = 7, small_leaves_per_node = 6 })
  has(e, "without double_type")
  _, e = flexmig.check_policy({ small_type = "1g.5gb", double_type = "1g.10gb", leaves_per_node = 7, small_leaves_per_node = 6, colour = 1 })
  has(e, "unknown parameter 'colour'")
  _, e = flexmig.check_policy({ small_type = "", leaves_per_node = 7, small_leaves_per_node = 7 }); has(e, "small_type")
  _, e = flexmig.check_policy({ small_type = "a", leaves_per_node = 0, small_leaves_per_node = 0 }); has(e, "leaves_per_node")
  _, e = flexmig.check_policy(3); has(e, "must return a table")
  local p, e2 = flexmig.load_policy("/nonexistent"); eq(p, nil); has(e2, "flexmig-gres-helper gres-conf --policy")
  local shipped = assert(flexmig.load_policy(confdir))
  eq(shipped.small_type, "1g.10gb")
end)

test("gpu_request spots other GPU requests", function()
  eq(flexmig.gpu_request(nil, "", "0"), nil)
  eq(flexmig.gpu_request(nil, "gres:gpu:2"), "gres:gpu:2")
  eq(flexmig.gpu_request("2"), "2")
  eq(flexmig.gpu_request("cpu:4"), nil)
end)

-- The shipped example policy (14 leaves: 12 x 1g.10gb + 2 x 1g.20gb) through the entry points.
test("job_submit rewrites tres_per_node", function()
  local j = { tres_per_node = "gres:mig:6", user_id = 1000 }
  eq(job_submit(j, {}, 1000), slurm.SUCCESS)
  eq(j.tres_per_node, "gres:gpu:1g.10gb:6")
  has(last_log("info"), "gres:mig:6 -> gres:gpu:1g.10gb:6")
  j = { tres_per_node = "gres:mig:1" }
  eq(job_modify(j, {}, {}, 0), slurm.SUCCESS)
  eq(j.tres_per_node, "gres:gpu:1")
end)

test("job_submit leaves other jobs alone", function()
  local j = { tres_per_node = "gres:gpu:1g.10gb:2" }
  eq(job_submit(j, {}, 0), slurm.SUCCESS); eq(j.tres_per_node, "gres:gpu:1g.10gb:2")
  j = {}
  eq(job_submit(j, {}, 0), slurm.SUCCESS); eq(j.tres_per_node, nil)
  eq(#logs, 0)
end)

test("job_submit refuses bad requests with a user message", function()
  local j = { tres_per_node = "gres:mig:0" }
  eq(job_submit(j, {}, 0), slurm.ERROR); has(last_log("user"), "mig:0")
  j = { tres_per_node = "gres:mig:15" }
  eq(job_submit(j, {}, 0), slurm.ERROR); has(last_log("user"), "a node has 14")
  j = { tres_per_node = "gres:mig:2", tres_per_job = "gres:gpu:1" }
  eq(job_submit(j, {}, 0), slurm.ERROR); has(last_log("user"), "cannot be combined")
  eq(j.tres_per_node, "gres:mig:2")
end)

test("cli_filter rewrites options.gres for srun/sbatch/salloc", function()
  local o = { gres = "mig:2" }
  eq(slurm_cli_setup_defaults(o, false), slurm.SUCCESS)
  eq(slurm_cli_pre_submit(o, 0), slurm.SUCCESS); eq(o.gres, "gpu:1g.10gb:2")
  o = { gres = "mig:1" }
  eq(slurm_cli_pre_submit(o, 0), slurm.SUCCESS); eq(o.gres, "gpu:1")
  o = { gres = "gpu:1g.20gb:1" }
  eq(slurm_cli_pre_submit(o, 0), slurm.SUCCESS); eq(o.gres, "gpu:1g.20gb:1")
  o = {}
  eq(slurm_cli_pre_submit(o, 0), slurm.SUCCESS)
  eq(slurm_cli_post_submit(0, 1, 0), slurm.SUCCESS)
end)

test("cli_filter refuses bad requests", function()
  local o = { gres = "mig:0" }
  eq(slurm_cli_pre_submit(o, 0), slurm.ERROR); has(last_log("error"), "mig:0")
  o = { gres = "mig:2", gpus = "1" }
  eq(slurm_cli_pre_submit(o, 0), slurm.ERROR); has(last_log("error"), "cannot be combined")
  o = { gres = "mig:99" }
  eq(slurm_cli_pre_submit(o, 0), slurm.ERROR); has(last_log("error"), "a node has 14")
end)


-- The rule's cases, shared with the simulator's tests: slurm-conf/size_rule.cases.
test("the size-aware rule's shared cases", function()
  local n = 0
  for line in io.lines(confdir .. "/size_rule.cases") do
    local body = line:gsub("#.*", "")
    local model, gpus, small, double, req, rest = body:match("^%s*(%S+)%s+(%d+)%s+(%d+)%s+(%d+)%s+(%d+)%s+(.-)%s*$")
    if model then
      n = n + 1
      small, double, req = tonumber(small), tonumber(double), tonumber(req)
      local p = { small_type = "S", double_type = double > 0 and "D" or nil, leaves_per_node = small + double,
                  small_leaves_per_node = small, single_prefers_double = true }
      local got, err = flexmig.rewrite("mig:" .. req, p)
      local what = model .. " x" .. gpus .. " mig:" .. req
      if rest == "refused" then
        eq(got, nil, what); has(err, "a node has " .. (small + double))
      else
        local ws, wd = rest:match("^small (%d+) double (%d+)$")
        eq(ws ~= nil, true, what .. ": malformed case '" .. rest .. "'")
        ws, wd = tonumber(ws), tonumber(wd)
        -- An untyped gpu:1 takes the lowest free GRES index: a double leaf (the helper's order).
        local s, d = 0, 0
        if got == "gpu:1" then d = 1 else
          s = tonumber(got:match("gpu:S:(%d+)") or "0")
          d = tonumber(got:match("gpu:D:(%d+)") or "0")
        end
        eq(s .. "+" .. d, ws .. "+" .. wd, what .. " (" .. tostring(got) .. ")")
      end
    end
  end
  eq(n > 0, true, "size_rule.cases has no cases")
end)

print(string.format("lua filters: %d passed, %d failed", passed, failed))
if passed == 0 then
  io.stderr:write("lua filters: no test ran\n")
  os.exit(1)
end
os.exit(failed == 0 and 0 or 1)
