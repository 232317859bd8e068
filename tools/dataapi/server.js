// The RDS Data API emulator the tests run: data-api-local (npm) over a real
// PostgreSQL, with two of its behaviours brought in line with AWS's, each said here:
// - data-api-local cuts a statement at its first semicolon followed by text without
//   quotes (it reads `;` inside a dollar-quoted DO body as the end); AWS runs the
//   statement it is given whole.
// - data-api-local answers a database error as "ERROR: message\n  Position: N";
//   AWS adds "; SQLState: XXXXX", which the job reads.
// Usage: node server.js PORT PGHOST PGPORT PGUSER PGPASSWORD [CA_PEM] (with a CA: TLS)
// - data-api-local takes a request body of at most 100 KB (express's default); the
//   job's inputs for thousands of users are larger, and AWS documents no such limit
//   (the SQL text alone is at most 64 KiB): 4 MB here.
const bodyParser = require('body-parser');
const json = bodyParser.json;
Object.defineProperty(bodyParser, 'json', {
  value: (options) => json({ ...options, limit: '4mb' }),
});
const transform = require('data-api-local/lib/utils/transformQuery');
const postgres = require('data-api-local/lib/PostgresClient');
const createError = require('http-errors');
const { dataApiLocal } = require('data-api-local');

const cut = transform.transformQuery;
transform.transformQuery = (query, parameters) => {
  // The statement whole: the parameters substituted, nothing cut.
  const marker = '\u0000';
  const kept = query.replace(/;/g, marker);
  const result = cut(kept, parameters);
  return { ...result, query: result.query.split(marker).join(';') };
};

postgres.PostgresClient.prototype.query = async function ({ query, values }) {
  try {
    return await this.client.query({ text: query, values, rowMode: 'array' });
  } catch (error) {
    const position = error.position ? `\n  Position: ${error.position}` : '';
    throw createError(400, `${error.severity}: ${error.message}${position}; SQLState: ${error.code}`);
  }
};

const [port, host, pgPort, user, password, ca] = process.argv.slice(2);
const ssl = ca ? { ca: require('fs').readFileSync(ca, 'utf8') } : false;
dataApiLocal({
  logger: () => {},
  server: { hostname: '127.0.0.1', port: Number(port) },
  database: {
    engine: 'postgresql', host, port: Number(pgPort), user, password, database: 'postgres', ssl,
  },
}).then(() => process.stdout.write('ready\n'));
