-- Argo CD resource health check for tgipool.io/ModelPool (Lua 5.1, as Argo CD runs it).
-- Install: resource.customizations.health.tgipool.io_ModelPool in argocd-cm (docs/gitops.md).
--
--   no status yet, or status of an older generation  -> Progressing (the operator has not caught up)
--   Degraded=True, or phase Invalid / Infeasible / Degraded -> Degraded (with the operator's reason)
--   Ready=True                                         -> Healthy
--   Ready=False because the pool is cold or scaled to zero on purpose (ColdTier, ScaledToZero)
--                                                      -> Healthy (idle by design, weights cached)
--   anything else                                      -> Progressing (fetching weights, rolling out)
local hs = {}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local msg = c.message or ""
  if c.reason ~= nil and c.reason ~= "" then
    if msg ~= "" then
      return c.reason .. ": " .. msg
    end
    return c.reason
  end
  if msg ~= "" then
    return msg
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tgipool operator to reconcile the pool"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the tgipool operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")
local degraded = condition(conditions, "Degraded")
local progressing = condition(conditions, "Progressing")
local phase = status.phase or ""

if (degraded ~= nil and degraded.status == "True")
    or phase == "Invalid" or phase == "Infeasible" or phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe(degraded, "phase " .. phase)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil and (ready.reason == "ColdTier" or ready.reason == "ScaledToZero") then
  hs.status = "Healthy"
  hs.message = describe(ready, "idle")
  return hs
end

hs.status = "Progressing"
hs.message = describe(progressing, describe(ready, "phase " .. phase))
return hs
