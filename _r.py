import json, time, sys
import pipelines
t=time.time()
res = pipelines.run("recipes/ocr.yaml", out="/tmp/ocrt/out", executor="inline")
print(time.time()-t)
print(json.dumps(res.report["stages"], indent=1)[:3000])
k = res.kept()
for r in k.select(["key","ocr_text","ocr_word_f1","conversations"]).to_pylist(): print(r)
