-- Argo CD health check for inference.rkllm.io/RKLLMModel (rkllm-operator).
--
-- Install it as the argocd-cm key
-- resource.customizations.health.inference.rkllm.io_RKLLMModel (docs/install.md).
-- It reads the kstatus conditions the operator keeps, which hold on their own: Ready
-- is True with neither Reconciling nor Stalled, or exactly one of them is True.
--   Stalled=True              -> Degraded    (crash loop, failed download, refused pods...)
--   Reconciling=True          -> Progressing (pods starting, downloading, loading...)
--   Ready=True, no pods asked -> Suspended   (phase Suspended or ScaledToZero)
--   Ready=True                -> Healthy
local hs = {status = "Progressing", message = "Waiting for rkllm-operator to report the model's status"}
if obj.status == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for rkllm-operator to observe generation " .. generation
  return hs
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or ""
end

local ready, stalled, reconciling
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    elseif c.type == "Stalled" and c.status == "True" then
      stalled = c
    elseif c.type == "Reconciling" and c.status == "True" then
      reconciling = c
    end
  end
end

if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if reconciling ~= nil then
  hs.message = describe(reconciling)
  return hs
end
if ready ~= nil and ready.status == "True" then
  if obj.status.phase == "Suspended" or obj.status.phase == "ScaledToZero" then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = describe(ready)
  return hs
end
if ready ~= nil then
  hs.message = describe(ready)
end
return hs
