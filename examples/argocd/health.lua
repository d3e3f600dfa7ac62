-- ArgoCD health check for serving.paddlesla.io/PaddleModelService.
-- Installed as resource.customizations.health.serving.paddlesla.io_PaddleModelService (argocd-cm.yaml
-- holds an identical copy; a test keeps them equal and runs this file against sample statuses).
-- Reads what the operator writes: status.observedGeneration, status.conditions (Ready, Available,
-- Progressing, Degraded, ReconcileError), status.rollout (canary phase) and status.stableTag.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", or whichever of the two is set.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end

-- Conditions describe an older spec until the operator has seen the current generation.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if status.observedGeneration == nil or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local reconcileError = condition(status, "ReconcileError")
if isTrue(reconcileError) then
  hs.status = "Degraded"
  hs.message = describe(reconcileError, "The operator cannot reconcile this service")
  return hs
end

-- A canary of the desired tag was rolled back: the old tag still serves, the spec is not met.
-- (RolledBack with a different tag means spec.tag was reverted to the stable one: nothing to flag.)
local rollout = status.rollout
local desiredTag = nil
if obj.spec ~= nil then
  desiredTag = obj.spec.tag
end
if rollout ~= nil and rollout.phase == "RolledBack" and (rollout.tag == nil or rollout.tag == desiredTag) then
  hs.status = "Degraded"
  hs.message = "Rollout of " .. tostring(rollout.tag) .. " rolled back: " .. tostring(rollout.message or "")
  return hs
end
if rollout ~= nil and rollout.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = rollout.message or "Rollout paused"
  return hs
end
if rollout ~= nil and (rollout.phase == "Progressing" or rollout.phase == "Promoting") then
  hs.status = "Progressing"
  hs.message = rollout.message or ("Rolling out " .. tostring(rollout.tag))
  return hs
end

-- A new tag the rollout has not picked up yet: the operator has seen the spec (conditions may say
-- Ready, for the stable version) and starts the canary on its next rollout tick.
if desiredTag ~= nil and status.stableTag ~= nil and status.stableTag ~= desiredTag then
  hs.status = "Progressing"
  hs.message = "Waiting to roll out " .. tostring(desiredTag) .. " (stable: " .. tostring(status.stableTag) .. ")"
  return hs
end

-- A rollout or scale-up in progress is Progressing even while replicas are short (the operator then
-- also reports Degraded=ReplicasUnavailable); a stuck one turns Progressing=False and Degraded=True.
local progressing = condition(status, "Progressing")
if isTrue(progressing) then
  hs.status = "Progressing"
  hs.message = describe(progressing, "Rolling out")
  return hs
end

local degraded = condition(status, "Degraded")
if isTrue(degraded) then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end

local ready = condition(status, "Ready")
if isTrue(ready) then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the service to become ready")
return hs
