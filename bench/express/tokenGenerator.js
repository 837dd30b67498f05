// The seed guide's token generator, unchanged but for one thing: TOKEN_URL points it at
// the bench's fake upstream.
const axios = require('axios');
require("dotenv").config();

const TOKEN_URL = process.env.TOKEN_URL || "https://streaming.assemblyai.com/v3/token";

async function generateTempToken(expiresInSeconds) {
  const url = `${TOKEN_URL}?expires_in_seconds=${expiresInSeconds}`;
  try {
    const response = await axios.get(url, {
      headers: { Authorization: process.env.ASSEMBLYAI_API_KEY },
    });
    return response.data.token;
  } catch (error) {
    console.error("Error generating temp token:", error.response?.data || error.message);
    throw error;
  }
}

module.exports = { generateTempToken };
