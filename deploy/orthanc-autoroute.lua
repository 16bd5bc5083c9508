-- Orthanc Lua: when a study is stable, push it to tumorlens if it holds MR images
-- and was not produced by tumorlens itself (its SEG/SR/PDF come back into the same study).
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local hasMr = false
  for _, s in pairs(series) do
    if s['MainDicomTags']['Modality'] == 'MR' then hasMr = true end
  end
  if hasMr then
    print('tumorlens: routing study ' .. studyId)
    RestApiPost('/modalities/tumorlens/store',
      DumpJson({ Resources = { studyId }, Synchronous = false }, true))
  end
end
