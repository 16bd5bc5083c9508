-- Orthanc Lua: when a study is stable, push its MR series to tumorlens.
--
-- tumorlens sends its results (SEG, SR, PDF) back into the same study, which makes the study
-- stable again; only MR series are pushed (tumorlens stores MR only), and only when the study
-- holds MR instances that were not pushed before, so results do not start a loop. The table
-- lives in Orthanc's Lua context: after an Orthanc restart a study may be pushed once more,
-- which tumorlens recognises as duplicates (no new analysis).
local routed = {}  -- Orthanc study ID -> number of MR instances pushed

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local mrSeries = {}
  local mrInstances = 0
  for _, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'MR' then
      table.insert(mrSeries, s['ID'])
      mrInstances = mrInstances + #s['Instances']
    end
  end
  if mrInstances == 0 or routed[studyId] == mrInstances then
    return
  end
  routed[studyId] = mrInstances
  print('tumorlens: routing ' .. mrInstances .. ' MR instances of study ' .. studyId)
  RestApiPost('/modalities/tumorlens/store',
    DumpJson({ Resources = mrSeries, Synchronous = false }, true))
end
