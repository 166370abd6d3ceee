// tus-js-client against the API, driven by tests/test_tus_clients.py.
//
// One JSON argument: {endpoint, file, chunkSize, metadata, uploadUrl?, withUpload?}.
// Prints one JSON object per line: {"event": "url"}, {"event": "offset"} after each
// acknowledged chunk, then {"event": "done"} with what the last answer said of the file
// (X-File-Url, X-Owner-Token). The test kills this process mid-upload and starts it
// again with uploadUrl to resume.
import fs from 'node:fs'
import * as tus from 'tus-js-client'

const cfg = JSON.parse(process.argv[2])
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n')
let fileUrl = null
let ownerToken = null

const upload = new tus.Upload(fs.createReadStream(cfg.file), {
  endpoint: cfg.endpoint,
  uploadUrl: cfg.uploadUrl || null,
  chunkSize: cfg.chunkSize,
  metadata: cfg.metadata,
  uploadSize: fs.statSync(cfg.file).size,
  uploadDataDuringCreation: Boolean(cfg.withUpload),
  storeFingerprintForResuming: false,
  // A chunk refused while a killed request still holds the upload (423), or one
  // whose offset moved (409), is retried from the offset HEAD tells.
  retryDelays: [0, 250, 500, 1000, 2000],
  onUploadUrlAvailable () {
    say({ event: 'url', url: upload.url })
  },
  onChunkComplete (_size, accepted, total) {
    say({ event: 'offset', offset: accepted, total })
  },
  onAfterResponse (_req, res) {
    if (res.getHeader('X-File-Url')) {
      fileUrl = res.getHeader('X-File-Url')
      ownerToken = res.getHeader('X-Owner-Token')
    }
  },
  onSuccess () {
    say({ event: 'done', url: upload.url, fileUrl, ownerToken })
    process.exit(0)
  },
  onError (error) {
    say({ event: 'error', message: String(error) })
    process.exit(1)
  }
})
upload.start()
