-- Argo CD health check for sampleforge runs (AugmentationRun and FineTuneRun share one status
-- contract). Argo CD runs it with gopher-lua (Lua 5.1) and the object in the global `obj`; it
-- must return {status = Healthy|Progressing|Degraded|Suspended, message = ...}.
--
--   Succeeded                              -> Healthy     (the run's work is done)
--   Failed, or Stalled=True (e.g. a Secret
--   is missing, the image cannot be pulled) -> Degraded    (a person must act)
--   Suspended                              -> Suspended   (spec.suspend: true)
--   Pending, Waiting, Running, no status
--   yet, or a spec change not yet observed -> Progressing
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the sampleforge operator to report a status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Succeeded")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(condition(status, "Failed"), message_of(stalled, "Failed"))
  return hs
end
if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(condition(status, "Suspended"), "Suspended (spec.suspend)")
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, phase)
  return hs
end

hs.status = "Progressing"
local reconciling = condition(status, "Reconciling")
if phase == "Waiting" then
  hs.message = message_of(condition(status, "Waiting"), "Waiting")
else
  hs.message = message_of(reconciling, phase)
end
return hs
