"""A tiny SMTP-speaking server for the demo: it accepts one message at a time and prints it."""
import socketserver
import sys


class Session(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())
        self.wfile.flush()

    def handle(self):
        self.reply("220 demo.example.org ESMTP ready")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 demo.example.org")
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                body = []
                while True:
                    data = self.rfile.readline()
                    if not data or data.rstrip(b"\r\n") == b".":
                        break
                    body.append(data.decode(errors="replace").rstrip("\r\n"))
                print("smtp-server: received a message of %d lines" % len(body), flush=True)
                self.reply("250 OK: queued")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 command not implemented")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Session).serve_forever()
