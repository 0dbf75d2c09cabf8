//! Test servers shared by the crates' tests (feature `test-util`; never in a release build).

use std::path::Path;

/// A CA and a leaf for 127.0.0.1 made with the openssl CLI, and a python3 HTTPS server with
/// the leaf serving `dir`; killed on drop.
#[derive(Debug)]
pub struct HttpsServer {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl HttpsServer {
    /// Starts it; panics when openssl or python3 is missing.
    pub fn start(dir: &Path) -> HttpsServer {
        use std::io::BufRead;
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(dir)
                .output()
                .expect("sh");
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        sh(&format!(
            "openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 1 -subj /CN=rampart-test-ca 2>/dev/null"
        ));
        sh(&format!(
            "openssl req {ec} -keyout leaf.key -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null && \
             printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > leaf.ext && \
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -out leaf.pem -days 1 -extfile leaf.ext 2>/dev/null"
        ));
        let server = "import http.server, ssl, sys\n\
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
            ctx.load_cert_chain('leaf.pem', 'leaf.key')\n\
            srv = http.server.HTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
            print(srv.server_address[1], flush=True)\n\
            srv.serve_forever()\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", server])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        HttpsServer { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
