package logsum

import "testing"

func BenchmarkParseLine(b *testing.B) {
	line := []byte(`{"time":"2026-11-25T08:00:00.5Z","level":"INFO","msg":"audit","kind":"http","client":"10.0.0.5:40000","pid":7,"uid":0,"comm":"python3","cgroup":"/kubepods/pod1/cri-containerd-1.scope","namespace":"ns","pod":"p","workload":"ns/p","host":"api.example.com","ip":"192.0.2.10","port":443,"sni":"api.example.com","tls":"decrypted","alpn":"h2","proto":"HTTP/2.0","method":"GET","path":"/x","status":429,"source":"sluice","bytes_in":3,"bytes_out":4,"duration_ms":1.5,"decision":"deny","rule":"rl","reason":"rate limit exceeded","header":{"Accept":"*/*","User-Agent":"curl/8"}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if _, err := ParseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}
